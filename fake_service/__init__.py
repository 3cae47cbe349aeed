"""A local stand-in for the RunComfy Model API (Seedream 4.0 edit-sequential), for tests and demos."""

from .behaviour import FakeBehaviour, Fault
from .server import FakeRunComfy, RecordedRequest

__all__ = ["FakeBehaviour", "FakeRunComfy", "Fault", "RecordedRequest"]
