"""The ground floor: running code in other processes, and getting a value back whatever happens there.

- `child`: a function in a fresh interpreter with a timeout (`run_in_child`), or several in one
  interpreter that imports torch once and forks a worker per stage (`run_stages_in_child`); a hang
  or a crash comes back as an error value, never as an exception in the doctor.
- `_child_main`: the entry point those interpreters run.
- `forked`: independent CPU work shared with a forked copy of this process (the sizing child).
- `bnb_import`: `import bitsandbytes` without its torch.compile wrappers, for any child that needs it.

The probes and the memory estimator stand on this floor; it imports neither.
"""
