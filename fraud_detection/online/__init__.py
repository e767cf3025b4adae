"""Online features: score one raw transaction with the features training computed in batch.

A card network sends a raw transaction (id, time, card, terminal, amount); the model needs its
eighteen window features, which depend on the card's and the terminal's recent history. This
package keeps that history (``state``: in memory for one worker, in Redis for several), computes
the features with the same rules as ``data.features.add_features`` (``features``), and turns the
routes' JSON into checked transactions and labels (``requests``). ``service`` ties them to the
model being served; ``serving/api.py`` only routes to it.
"""
