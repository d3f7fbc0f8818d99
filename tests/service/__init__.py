"""Tests of running cdc-daemon as a service: metrics, alerts, systemd notify and units, logs."""
