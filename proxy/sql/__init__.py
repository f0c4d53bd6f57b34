"""The planner: pure passes from a statement text and the rules to a Plan."""
