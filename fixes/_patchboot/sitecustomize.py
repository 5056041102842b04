"""stallscope patch bootstrap: put on PYTHONPATH by `stallscope run --patch-from` (stdlib only).

When ``STALLSCOPE_PATCH_FROM`` is set it waits for the process to import torch, then calls
``fixes.autopatch.attach_from_report`` (which patches each model at its first forward and
checks parity on that batch); then it hands over to any ``sitecustomize`` it shadows.
"""
import os
import sys


def _stallscope_patch_attach():
    try:
        home = os.environ.get("STALLSCOPE_HOME")
        if home and home not in sys.path:
            sys.path.append(home)
        from fixes import autopatch

        autopatch.attach_from_report(os.environ["STALLSCOPE_PATCH_FROM"])
    except Exception as exc:  # the target must run even if patching cannot
        sys.stderr.write("stallscope: patches not applied in pid %d: %s: %s\n" % (os.getpid(), exc.__class__.__name__, exc))


def _stallscope_patch_boot():
    if not os.environ.get("STALLSCOPE_PATCH_FROM"):
        return
    if "torch" in sys.modules:
        _stallscope_patch_attach()
        return
    import importlib.abc
    import importlib.util

    class _TorchWatcher(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name != "torch":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec("torch")
            if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
                return spec
            original = spec.loader.exec_module

            def exec_module(module):
                original(module)
                _stallscope_patch_attach()

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _TorchWatcher())


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


_stallscope_patch_boot()
_chain_next_sitecustomize()
