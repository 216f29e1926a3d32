"""The generated example: MovieLens-like data and the feature repository that uses it."""
