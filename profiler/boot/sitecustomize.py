"""stallscope bootstrap: injected on PYTHONPATH by `stallscope profile` (stdlib only, no torch).

It arms a hook that attaches the profiler right after the process imports torch, then hands
over to any other ``sitecustomize`` that this one shadows.
"""
import os
import sys


def _stallscope_boot():
    if not os.environ.get("STALLSCOPE_RUN_DIR"):
        return
    try:
        try:
            from profiler import _bootstrap
        except ImportError:
            home = os.environ.get("STALLSCOPE_HOME")
            if not home:
                raise
            if home not in sys.path:
                sys.path.append(home)
            from profiler import _bootstrap
        _bootstrap.arm()
    except Exception as exc:  # never break the target
        sys.stderr.write("stallscope: bootstrap disabled in pid %d: %s: %s\n" % (os.getpid(), exc.__class__.__name__, exc))


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
        sys.stderr.write("stallscope: the original sitecustomize failed: %s: %s\n" % (exc.__class__.__name__, exc))
    finally:
        sys.path[:] = saved_path


_stallscope_boot()
_chain_next_sitecustomize()
