"""Simulator backends. Each module defines one :class:`lift.simulator.Simulator`.

A new backend lives in ``lift/backends/<name>.py`` and exposes a class whose
constructor takes a :class:`lift.types.SimulatorConfig`; ``lift/__init__.py``
registers it by its import path, so the optional package is imported only when used.
The class implements the abstract, engine-specific methods of ``Simulator``; ``step``
(validate, apply targets, score, auto-reset) is inherited.
"""
