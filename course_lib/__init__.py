"""course_lib: the tested building blocks behind the diffusion-model notebooks.

Data flows one way through the modules:
config -> data -> blocks -> unets -> ddpm -> train -> classifier/metrics, viz/check -> notebooks
and grader.
"""
__version__ = "0.1.0"
