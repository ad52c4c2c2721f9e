"""`python cgroup_exec.py TASKS_FILE SCRIPT ARGS...`: join the cgroup whose `tasks` file is given, then
exec `python SCRIPT ARGS...` in this same process, so everything it runs is counted in the group."""

import os
import sys

with open(sys.argv[1], "w") as tasks:
    tasks.write(str(os.getpid()))
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
