"""The pinned public surface (as trio's test_exports): each public module's ``__all__`` is the
list below, every name in it exists, and every other top-level name the module defines is
private (leading underscore) or listed here as internal. Adding, removing or renaming a public
name therefore fails this test until the test is changed with it, on purpose."""

from __future__ import annotations

import ast
import importlib
import inspect

import pytest

PUBLIC: dict[str, set[str]] = {
    "pysfu": {
        "Config", "ConfigError", "RequestFailed", "Server", "SignalingClient", "SignalingError",
        "__version__", "connect", "load_config", "serve",
    },
    "pysfu.client": {"SCTP_CAPABILITIES", "ConnectionLost", "RequestFailed", "ResumeState",
                     "SignalingClient", "connect", "with_token",
                     # cluster placement: join answered ``redirect {url}``
                     "MAX_REDIRECTS", "Redirected", "connect_and_join"},
    "pysfu.config": {"Config", "ConfigError", "load_config", "normal_origin"},
    "pysfu.errors": {
        "SignalingError", "ALREADY_CONNECTED", "ALREADY_CONSUMING", "ALREADY_JOINED",
        "BAD_REQUEST", "CANNOT_CONSUME", "CONSUMER_NOT_FOUND", "FORBIDDEN", "INTERNAL_ERROR",
        "INVALID_DTLS_PARAMETERS", "INVALID_FIELD", "LIMIT_EXCEEDED", "NOT_JOINED",
        "PRODUCER_NOT_FOUND", "RATE_LIMITED", "TRANSPORT_NOT_FOUND", "UNAUTHORIZED",
        "UNKNOWN_EVENT", "UNAVAILABLE", "ROOM_NOT_FOUND", "PEER_NOT_FOUND",
    },
    "pysfu.auth": {"ANY_ROOM", "AuthError", "Grant", "Verifier", "create_token"},
}

# Top-level names a module defines without an underscore that are not part of its surface:
# module-level loggers and constants other pysfu modules share.
INTERNAL: dict[str, set[str]] = {
    "pysfu": set(),
    "pysfu.client": {"RESUME_RETRY_MIN", "RESUME_RETRY_MAX", "RESUME_PATIENCE"},
    "pysfu.config": {"default_workers"},  # the workers default (tests check it)
    "pysfu.errors": set(),
    "pysfu.auth": {"ALGORITHM", "ROLES", "MIN_SECRET_BYTES", "MAX_TOKEN_LENGTH",
                   "MAX_NAME_LENGTH", "LEEWAY_SECONDS"},
}


def _defined_names(module_name: str) -> set[str]:
    """Top-level names the module's own source binds (defs, classes, assignments), not
    counting imports and ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(inspect.getsource(importlib.import_module(module_name)))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names - {"__all__", "logger"}


@pytest.mark.parametrize("module_name", sorted(PUBLIC))
def test_all_is_pinned(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert set(module.__all__) == PUBLIC[module_name]
    assert len(module.__all__) == len(set(module.__all__)), "a name twice in __all__"
    for name in module.__all__:
        assert getattr(module, name) is not None


@pytest.mark.parametrize("module_name", sorted(PUBLIC))
def test_no_unlisted_public_name(module_name: str) -> None:
    public = {n for n in _defined_names(module_name) if not n.startswith("_")}
    unlisted = public - PUBLIC[module_name] - INTERNAL[module_name]
    assert not unlisted, f"{module_name}: public names neither exported nor listed internal"
    stale = INTERNAL[module_name] - public
    assert not stale, f"{module_name}: names listed internal that no longer exist"


def test_star_import_gives_exactly_the_surface() -> None:
    for module_name, names in PUBLIC.items():
        namespace: dict[str, object] = {}
        exec(f"from {module_name} import *", namespace)  # noqa: S102
        assert set(namespace) - {"__builtins__"} == names


def test_package_names_are_lazy_aliases_of_their_modules() -> None:
    import pysfu
    import pysfu.client
    import pysfu.config
    import pysfu.server

    assert pysfu.serve is pysfu.server.serve and pysfu.Server is pysfu.server.Server
    assert pysfu.connect is pysfu.client.connect and pysfu.Config is pysfu.config.Config
    with pytest.raises(AttributeError):
        pysfu.no_such_name  # noqa: B018
