import pysfu
from pysfu import _native


def test_native_module_matches_package_version() -> None:
    assert _native.version() == pysfu.__version__
