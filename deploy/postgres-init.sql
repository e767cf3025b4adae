-- Run once by the postgres image on an empty volume (docker-compose.yml): the basic-auth app
-- keeps users and permissions in a database of their own.
CREATE DATABASE mlflow_auth;
