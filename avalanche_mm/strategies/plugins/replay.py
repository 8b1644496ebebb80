"""Avalanche's ``ReplayPlugin`` updating its buffer through ``post_adapt``."""

from __future__ import annotations

from avalanche.training.plugins import ReplayPlugin as _ReplayPlugin


class ReplayPlugin(_ReplayPlugin):
    """Avalanche's ``ReplayPlugin`` that updates its buffer through ``post_adapt``.

    Avalanche 0.6.0's plugin calls the storage policy's deprecated
    ``update`` after every experience (one ``DeprecationWarning`` each time).
    This twin calls ``post_adapt(strategy, strategy.experience)`` - what
    ``update`` forwards to - and still calls ``update`` for a custom policy
    that overrides it. Same constructor as Avalanche's.
    """

    def after_training_exp(self, strategy, **kwargs):
        from avalanche.training.storage_policy import ExemplarsBuffer

        policy = self.storage_policy
        if type(policy).update is not ExemplarsBuffer.update:
            policy.update(strategy, **kwargs)
        else:
            policy.post_adapt(strategy, strategy.experience)


__all__ = ['ReplayPlugin']
