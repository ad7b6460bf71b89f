"""Not used: scriptFile and entryPoint point elsewhere."""
