"""Per-client sessions: the relay state machine between client and server, and
the statement hooks that apply the planner's plans to one session's tenant."""
