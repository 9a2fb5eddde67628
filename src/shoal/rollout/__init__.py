"""Rollouts: canary splits, shadow traffic and progressive delivery, inside the server.

A rollout is an endpoint that wraps endpoints (:mod:`.endpoint`); the registry resolves a
public name to it while it is active, so every protocol, batching and graphs get it. Specs
are in :mod:`.spec`, shared state in :mod:`.store`, the analysis in :mod:`.analysis`, and
:mod:`.manager` ties them together for the server's routes and the ``shoal rollout`` CLI.
"""
