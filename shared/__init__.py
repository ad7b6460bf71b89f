"""The lab report intake application: everything the function folders call into."""
