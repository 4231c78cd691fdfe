"""course_lib: the tested building blocks behind the diffusion-model notebooks.

Data flows one way through the modules (each imports only from the ones before it; the one
exception is the grader's command line, where grade hands its ``slurm`` and ``collect``
commands to gradebook):

- config, storage -> data -> blocks, conditioning -> unets -> ddpm (schedules, samplers,
  guidance) -> editing, toy2d (the 2-D world, on ddpm's schedule) -> train -> classifier ->
  metrics; image_tower, framing -> clip (which trains with train);
- viz, viz2d, check, pace: what the notebooks show, check and estimate;
- the grader: syscall_filter, cgroup_limits -> sandbox; grade_checks -> submission_code -> grade
  (grade_runner is its step inside the sandbox) -> review -> gradebook; answer_key fills 06.

Notebooks and the grader's command line import these modules; nothing here imports a notebook.
"""
__version__ = "0.1.0"
