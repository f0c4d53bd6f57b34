"""The SQL pipeline: what happens to each statement before it is forwarded."""
