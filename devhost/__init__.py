"""devhost: a local stand-in for the Azure Functions host (Core Tools `func start`) for v1-model Python apps."""

__version__ = "1.0.0"
