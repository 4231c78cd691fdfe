"""course_lib: the tested building blocks behind the diffusion-model notebooks.

Data flows one way through the modules (each imports only from the ones before it, at its top
or inside a function; tests/test_imports.py holds it so):

- config, storage -> data -> blocks, conditioning -> unets -> ddpm (schedules, samplers,
  guidance) -> editing, toy2d (the 2-D world, on ddpm's schedule) -> train -> classifier ->
  metrics; image_tower, framing -> clip (which trains with train);
- viz, viz2d, check, pace: what the notebooks show, check and estimate;
- the grader: syscall_filter, cgroup_limits -> sandbox; grade_checks (the judges) -> grade_report
  (a submission's report) -> submission_code, grade_intake (submissions in) -> grade_out (the OUT
  folder) -> grade_options (the command line) -> review -> gradebook (a cohort's books, Slurm)
  -> grade (running and judging; grade_runner is its step inside the sandbox); answer_key
  fills 06.

Notebooks and the grader's command line import these modules; nothing here imports a notebook.
"""
__version__ = "0.1.0"
