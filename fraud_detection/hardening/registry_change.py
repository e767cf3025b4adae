"""Registry changes that happen whole or not at all, and the promotion lock they run under.

Guards against: a register step that fails half-way through a promotion (a store down while it
writes its record) leaving ``@champion`` moved while the step reports failure, or a new version
behind that no finished step decided on. Seen on the production stack with S3 down during
``register``: version created, both aliases moved, then ``decision.json`` failed (exit 1, run
FAILED, the new champion serving). With ``RegistryChange`` the reliability benchmark counts
``champion_moved_by_failed_step`` = 0.

Also guards against two promotions racing: the registry has no compare-and-set for aliases, so
changes of one registered model are serialised by a lock that works on every tracking backend.

A fork may leave this alone. Removing it brings back both failures above.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fraud_detection.errors import (
    PromotionConflictError,
    is_absent,
)
from fraud_detection.hardening.spool import remember

logger = logging.getLogger(__name__)

LOCK_SUFFIX = "--promotion-lock"
LOCK_STALE_SECONDS = 120
# A promotion holds the lock for about a second: a second promotion waits this long for it.
LOCK_WAIT_SECONDS = 15.0


class _Unchecked:
    """``move_alias``'s default: the alias may point anywhere before the move."""


UNCHECKED = _Unchecked()


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version ``name@alias`` points at, as a string (None: no such model or alias).

    Any other failure (the tracking server or its database down) is raised, never read as
    "no champion": that would let a promotion skip the comparison with the real one.
    """
    version = version_by_alias(client, name, alias)
    # Stores differ in whether versions come back as int or str; compare them as str.
    return None if version is None else str(version.version)


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version ``name@alias`` (None: no such registered model or alias); see
    ``alias_version`` for the other failures.

    MLflow's basic-auth server (3.17) answers an alias lookup on a registered model that does
    not exist with 403 PERMISSION_DENIED (no model, so no permission to grant), where the other
    stores answer 404. The model itself is then looked up: 404 means there is no champion yet;
    a model that exists leaves the 403 standing.
    """
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if registry_absent(client, name, error):
            return None
        raise


def registry_absent(client: MlflowClient, name: str, error: MlflowException) -> bool:
    """Whether ``error``, from a lookup in registered model ``name``, means "not there".

    A 404, or the 403 that MLflow's basic-auth server (3.17) answers for anything under a
    registered model that does not exist (no model, so no permission to grant) once a lookup
    of the model itself answers 404. A model that exists leaves the 403 standing.
    """
    return is_absent(error) or (
        error.error_code == "PERMISSION_DENIED" and not _registered_model_exists(client, name)
    )


def _registered_model_exists(client: MlflowClient, name: str) -> bool:
    try:
        client.get_registered_model(name)
    except MlflowException as error:
        if is_absent(error):
            return False
        raise
    return True


@dataclass(frozen=True)
class _Undo:
    """How to take back one registry write, as a spool record and as a call."""

    description: str
    repair: dict  # what ``recovery`` replays if the undo itself cannot be done now
    action: Callable[[], None]


class RegistryChange:
    """The registry writes of one register action, made whole or not at all.

    Entered, it takes the promotion lock of the registered model. Every write goes through one
    of its methods, which records how to undo it. ``commit(finish)`` runs ``finish`` (the step
    ends its run FINISHED) while the lock is still held: after it, the action is done. If
    anything raises before ``commit`` returns, the writes are undone in reverse order: aliases
    back where they were, versions the action created deleted, version tags restored. An undo
    that fails too (the server went down) is noted for ``recovery``, which repeats it once the
    server answers, and only where nobody has changed that part of the registry since.
    """

    def __init__(self, client: MlflowClient, name: str) -> None:
        self.client = client
        self.name = name
        self._undos: list[_Undo] = []
        self._lock = promotion_lock(client, name)
        self._committed = False

    def __enter__(self) -> RegistryChange:
        self._lock.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if exc is not None and not self._committed:
                self._undo(exc)
        finally:
            self._lock.__exit__(exc_type, exc, traceback)

    def commit(self, finish: Callable[[], None]) -> None:
        """Run ``finish`` (ending the step's run); once it returns the change is final."""
        finish()
        self._committed = True

    def ensure_registered_model(self, description: str) -> None:
        """Create the registered model unless it exists (undo: delete it, if still empty)."""
        try:
            self.client.create_registered_model(self.name, description=description)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return
        self._undos.append(
            _Undo(
                f"delete the new registered model {self.name}",
                {"kind": "registered_model", "model": self.name},
                lambda: delete_empty_registered_model(self.client, self.name),
            )
        )

    def create_version(
        self, model_id: str, run_id: str, tags: dict[str, str], description: str
    ) -> str:
        """Register logged model ``model_id`` (of run ``run_id``) with ``tags`` and
        ``description``, both part of the creation call: the version never exists without
        them. Undo: delete the version."""
        created = self.client.create_model_version(
            self.name,
            source=f"models:/{model_id}",
            run_id=run_id,
            tags=tags,
            description=description,
            model_id=model_id,
        )
        version = str(created.version)
        self._undos.append(
            _Undo(
                f"delete {self.name} version {version}",
                {"kind": "version", "model": self.name, "version": version},
                lambda: delete_version_unless_aliased(self.client, self.name, version),
            )
        )
        return version

    def set_version_tags(self, version: ModelVersion, tags: dict[str, str]) -> None:
        """Set ``tags`` on an existing version; undo: put back the values it had."""
        number = str(version.version)
        before = {key: version.tags.get(key) for key in tags}
        undo = _Undo(
            f"restore the tags of {self.name} version {number}",
            {"kind": "version_tags", "model": self.name, "version": number, "tags": before},
            lambda: restore_version_tags(self.client, self.name, number, before),
        )
        self._undos.append(undo)  # before writing: a half-done write is undone too
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, number, key, value)

    def set_version_description(self, version: ModelVersion, description: str) -> None:
        """Describe an existing version anew; undo: put back its description."""
        number, before = str(version.version), version.description or ""
        self._undos.append(
            _Undo(
                f"restore the description of {self.name} version {number}",
                {
                    "kind": "version_description",
                    "model": self.name,
                    "version": number,
                    "description": before,
                },
                lambda: self.client.update_model_version(self.name, number, before),
            )
        )
        self.client.update_model_version(self.name, number, description)

    def move_alias(
        self, alias: str, version: str, expected_before: str | _Unchecked | None = UNCHECKED
    ) -> None:
        """Point ``name@alias`` at ``version``; undo: point it back (or remove it).

        With ``expected_before``, the move is refused (``PromotionConflictError``) unless the
        alias still points there: a writer outside this template may have moved it, since the
        registry has no compare-and-set. The move is read back for the same reason.
        """
        before = alias_version(self.client, self.name, alias)
        if expected_before is not UNCHECKED and before != expected_before:
            raise PromotionConflictError(
                f"{self.name}@{alias} moved to version {before} (expected {expected_before}) "
                "while this step was deciding; re-run evaluate and register"
            )
        if before == version:
            return
        self._undos.append(
            _Undo(
                f"move {self.name}@{alias} back to {before or 'nothing'}",
                {
                    "kind": "alias",
                    "model": self.name,
                    "alias": alias,
                    "version": version,
                    "before": before,
                },
                lambda: restore_alias(self.client, self.name, alias, version, before),
            )
        )
        self.client.set_registered_model_alias(self.name, alias, version)
        after = alias_version(self.client, self.name, alias)
        if after != version:
            raise PromotionConflictError(
                f"{self.name}@{alias} is version {after} right after this step set it to "
                f"{version}: a promotion outside this template ran at the same time"
            )
        logger.info("%s@%s -> version %s (was %s)", self.name, alias, version, before)

    def _undo(self, cause: BaseException) -> None:
        pending = list(reversed(self._undos))
        while pending:
            undo = pending[0]
            try:
                undo.action()
            except Exception as error:  # noqa: BLE001 - the rest is left to recovery, and said
                path = remember([u.repair for u in pending], reason=str(cause))
                logger.error(
                    "Could not undo the registry change (%s: %s); %d undo step(s) noted in %s "
                    "for the next step or `python -m fraud_detection.hardening.recovery`",
                    undo.description,
                    str(error).splitlines()[0][:300],
                    len(pending),
                    path,
                )
                return
            logger.warning("Undone: %s", undo.description)
            pending.pop(0)


def restore_alias(
    client: MlflowClient, name: str, alias: str, moved_to: str, before: str | None
) -> None:
    """Point ``name@alias`` back at ``before`` if it still points at ``moved_to``."""
    now = alias_version(client, name, alias)
    if now != moved_to:
        return  # never set, or moved again since by someone else: theirs stands
    if before is None:
        client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, before)


def restore_version_tags(
    client: MlflowClient, name: str, version: str, before: dict[str, str | None]
) -> None:
    """Give ``version`` back the tag values ``before`` (None: the tag was absent)."""
    for key, value in before.items():
        if value is None:
            try:
                client.delete_model_version_tag(name, version, key)
            except MlflowException as error:
                if not is_absent(error):
                    raise
        else:
            client.set_model_version_tag(name, version, key, value)


def delete_version_unless_aliased(client: MlflowClient, name: str, version: str) -> None:
    """Delete ``name`` version ``version`` unless an alias points at it (or it is gone)."""
    try:
        if client.get_model_version(name, version).aliases:
            logger.warning("%s version %s has an alias again: kept", name, version)
            return
        client.delete_model_version(name, version)
    except MlflowException as error:
        if not is_absent(error):
            raise


def delete_empty_registered_model(client: MlflowClient, name: str) -> None:
    """Delete registered model ``name`` if it has no version left (and exists at all)."""
    try:
        if client.search_model_versions(f"name = '{name}'", max_results=1):
            return
        client.delete_registered_model(name)
    except MlflowException as error:
        if not is_absent(error):
            raise


@contextmanager
def promotion_lock(client: MlflowClient, name: str) -> Iterator[None]:
    """Hold the promotion lock of registered model ``name`` (on any tracking backend).

    Creating a registered model is atomic in every MLflow store (its name is unique), so the
    lock is a registered model named ``<name>--promotion-lock`` that exists while a promotion
    is in progress. Another holder is waited for up to ``LOCK_WAIT_SECONDS``; a lock older than
    ``LOCK_STALE_SECONDS`` (its holder died) is broken.
    """
    lock = f"{name}{LOCK_SUFFIX}"
    holder = {"by": getpass.getuser(), "host": socket.gethostname(), "pid": os.getpid()}
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    broken = False
    while True:
        try:
            client.create_registered_model(
                lock, description=json.dumps({**holder, "since": time.time()})
            )
            break
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            current = _lock_holder(client, lock)
            if current is None:
                continue  # released between our two requests: try again at once
            if not broken and time.time() - current.get("since", 0) > LOCK_STALE_SECONDS:
                logger.warning("Breaking a stale promotion lock of %s held by %s", name, current)
                _delete_lock(client, lock)
                broken = True
                continue
            if time.monotonic() > deadline:
                raise PromotionConflictError(
                    f"another promotion of {name} is in progress (held by {current.get('by')} "
                    f"on {current.get('host')}, pid {current.get('pid')}, for "
                    f"{time.time() - current.get('since', time.time()):.0f} s); re-run "
                    "register when it is done"
                ) from error
            time.sleep(0.5)
    try:
        yield
    finally:
        try:
            _delete_lock(client, lock)
        except Exception as error:  # noqa: BLE001 - noted for recovery; it also goes stale
            path = remember(
                [{"kind": "promotion_lock", "model": lock, "pid": holder["pid"]}],
                reason=f"promotion lock not released: {error}",
            )
            logger.warning(
                "Could not release the promotion lock %s (%s): noted in %s for recovery; "
                "the next promotion breaks it after %d s anyway",
                lock,
                str(error).splitlines()[0][:300],
                path,
                LOCK_STALE_SECONDS,
            )


def release_lock(client: MlflowClient, lock: str, pid: int) -> None:
    """Delete promotion lock ``lock`` if this host's process ``pid`` still holds it."""
    holder = _lock_holder(client, lock)
    if holder is not None and (holder.get("host"), holder.get("pid")) == (
        socket.gethostname(),
        pid,
    ):
        _delete_lock(client, lock)


def _lock_holder(client: MlflowClient, lock: str) -> dict | None:
    try:
        return json.loads(client.get_registered_model(lock).description or "{}")
    except MlflowException as error:
        if is_absent(error):
            return None
        raise


def _delete_lock(client: MlflowClient, lock: str) -> None:
    try:
        client.delete_registered_model(lock)
    except MlflowException as error:
        if not is_absent(error):
            raise
