"""Run policies, one small module each (suspend, deadline, TTL, spec edits): each decides, as
a pure function returning an action from `actions`, and `reconcile` carries it out."""
