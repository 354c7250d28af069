"""Serializers for job arguments, return values and exceptions."""

from .base import Serializer
from .json import JSONSerializer
from .pickle import PickleSerializer

__all__ = ["JSONSerializer", "PickleSerializer", "Serializer"]
