"""Personas as stored resources of the interface: records, their stores, the routes, and what chat uses."""
