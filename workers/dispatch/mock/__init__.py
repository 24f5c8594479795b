"""Test doubles that are real loopback HTTP servers: the strict remote queue (``hodlai
mock-queue``) and scripted agents (``hodlai mock-agents``), for the tests, the demo and the
benchmark."""
