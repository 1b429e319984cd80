"""Running inputs on more than one process or machine: one worker function, two executors.

``executor`` holds the contract (tasks in, outcomes out, a bounded number in flight) and the local executor;
``ray_executor`` the Ray one (``vald[cluster]``); ``worker`` the engine-owning worker both run; ``batch`` the
driver loop that hashes, loads and skips inputs, hands the rest to an executor and alone publishes the output
sets.  Nothing in the pipeline or the samplers knows which executor runs it.
"""
