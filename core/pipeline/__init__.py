"""The distiller (engine + distill), distributed execution and export."""
