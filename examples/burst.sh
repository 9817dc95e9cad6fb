#!/usr/bin/env bash
# Sixteen copies of the sweep started at once, as a shell loop or a job array would.
# Run inside a Sumatra project with sweep.py committed: bash burst.sh
for i in $(seq 16); do
  python sweep.py "$i" &
done
wait
