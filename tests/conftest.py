import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PYTHONHASHSEED", "0")


@pytest.fixture(scope="session", autouse=True)
def _diagnose_trace_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The CPU traces of tests/diagnose_traces.py go to a folder of this session (recorded on first use)."""
    from tests import diagnose_traces

    diagnose_traces.use_cache(tmp_path_factory.mktemp("diagnose-traces"))


@pytest.fixture(scope="session", autouse=True)
def _table_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Table files of the diagnose cache (analyzers/tablestore.py) go to a folder of this test
    session: never a cache shared with another checkout or run, never files next to the
    committed fixtures. Tests of the cache's own placement set STALLSCOPE_TABLE_CACHE themselves."""
    mp = pytest.MonkeyPatch()
    mp.setenv("STALLSCOPE_TABLE_CACHE", str(tmp_path_factory.mktemp("table-cache")))
    yield
    mp.undo()


try:  # CI runs the same hypothesis examples every time (derandomized); local runs keep exploring.
    from hypothesis import settings as _hyp_settings

    _hyp_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
    if os.environ.get("CI"):
        _hyp_settings.load_profile("ci")
except ImportError:  # pragma: no cover - hypothesis is a test extra
    pass
