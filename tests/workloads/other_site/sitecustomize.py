"""A pre-existing sitecustomize that stallscope's bootstrap must still run (it chains to it)."""
import os
import sys

if os.environ.get("STALLSCOPE_RUN_DIR"):  # only in the profiled target, not in stallscope itself
    sys.stdout.write("OTHER_SITECUSTOMIZE_RAN\n")
