"""The media types the HTTP API answers with (problem+json lives with the problems, shared/problems.py)."""

JSON = "application/json"
HL7 = "application/hl7-v2"
