"""stallscope bootstrap: put on PYTHONPATH by `stallscope profile` and `stallscope run --patch-from`
(stdlib only, no torch).

It arms a hook that, right after the process imports torch, attaches the profiler
(``STALLSCOPE_RUN_DIR``) and/or applies kept patches (``STALLSCOPE_PATCH_FROM``), then hands over
to any other ``sitecustomize`` that this one shadows.
"""

import os
import sys


def _stallscope_boot():
    profile, patch = os.environ.get("STALLSCOPE_RUN_DIR"), os.environ.get("STALLSCOPE_PATCH_FROM")
    if not (profile or patch):
        return
    try:
        try:
            from stallscope.profiler import _bootstrap
        except ImportError:
            # A Python without stallscope installed (another venv): load the package from the
            # folder `stallscope profile` ran from, under its one name.
            home = os.environ.get("STALLSCOPE_HOME")
            if not home:
                raise
            import importlib.util

            spec = importlib.util.spec_from_file_location(
                "stallscope", os.path.join(home, "__init__.py"), submodule_search_locations=[home]
            )
            if spec is None or spec.loader is None:
                raise
            pkg = importlib.util.module_from_spec(spec)
            sys.modules["stallscope"] = pkg
            spec.loader.exec_module(pkg)
            from stallscope.profiler import _bootstrap
        if profile:
            _bootstrap.arm(_bootstrap.attach_profiler)
        if patch:
            _bootstrap.arm(_bootstrap.attach_patches)
    except Exception as exc:  # never break the target
        sys.stderr.write(f"stallscope: bootstrap disabled in pid {os.getpid()}: {exc.__class__.__name__}: {exc}\n")


def _chain_next_sitecustomize():
    here = os.path.dirname(os.path.abspath(__file__))
    saved_path = list(sys.path)
    me = sys.modules.pop("sitecustomize", None)
    try:
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
        import importlib

        importlib.import_module("sitecustomize")
    except ImportError:
        if me is not None:
            sys.modules["sitecustomize"] = me
    except Exception as exc:
        sys.stderr.write(f"stallscope: the original sitecustomize failed: {exc.__class__.__name__}: {exc}\n")
    finally:
        sys.path[:] = saved_path


_stallscope_boot()
_chain_next_sitecustomize()
