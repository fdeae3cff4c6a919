"""Moving image bytes: extent-guided, concurrent, hashed in order."""
