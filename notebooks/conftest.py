"""`pytest --nbval notebooks/` runs every notebook in the fast `test` profile.

The kernels nbval starts inherit this environment, so setting the variable here is
enough; export COURSE_PROFILE=full yourself to check the stored full-profile outputs.
"""
import os

os.environ.setdefault("COURSE_PROFILE", "test")
os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
