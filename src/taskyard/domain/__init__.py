"""The domain: task and server rules, dispatch choice, background loops. No HTTP, no SQL."""
