"""Overload protection and resilience mechanisms (configured by ``performance.*`` and ``resilience.*``)."""
