"""Helpers of scripts/image-test: drive the image's `demo` through flows 1-4."""
