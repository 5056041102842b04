#!/usr/bin/env bash
# A shell-script target that ends in a python training command.
set -e
cd "$(dirname "$0")"
echo "shell: preparing"
exec python3 train_tiny.py "$@"
