"""``vald bench``: latency, memory and accuracy of every available backend and precision, side by side.

:mod:`~vald.bench.contenders` names what is compared, :mod:`~vald.bench.worker` measures one contender
in its own process (cold start, per-stage and end-to-end times, peak RSS, its outputs),
:mod:`~vald.bench.environment` records the machine, and :mod:`~vald.bench.run` drives them and writes
the JSON and the table.
"""
