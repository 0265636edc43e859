"""Inference engines behind the gateway: what to run (``EngineSpec``) and who keeps it running.

The embedded CPU engine (``server.engines.embedded``) is a separate process entry point and is not
re-exported: importing it here would pull starlette and, lazily, llama_cpp into the gateway.
"""

from server.engines.spec import EngineKind, EngineSpec, engine_command
from server.engines.supervisor import EngineState, EngineSupervisor, free_loopback_port

__all__ = [
    "EngineKind",
    "EngineSpec",
    "EngineState",
    "EngineSupervisor",
    "engine_command",
    "free_loopback_port",
]
