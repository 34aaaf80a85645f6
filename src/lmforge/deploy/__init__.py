"""Deployment targets beyond one machine: Kubernetes manifests (`lmforge deploy k8s`)."""
