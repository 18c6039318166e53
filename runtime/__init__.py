"""The jrtc runtime: load an exported engine and generate with it (numpy, the backend, tokenizers; no torch).

engine = Engine.load("engine-dir")
for token in engine.session().generate("The capital of France is"):
    print(token.text, end="", flush=True)
"""

from jrtc.runtime.engine import Engine, Manifest
from jrtc.runtime.prompt import Prompt, build_prompt
from jrtc.runtime.sampling import SamplingParams
from jrtc.runtime.session import Request, Session, Stats, Token

__all__ = [
    "Engine",
    "Manifest",
    "Prompt",
    "Request",
    "SamplingParams",
    "Session",
    "Stats",
    "Token",
    "build_prompt",
]
