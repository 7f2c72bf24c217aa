# A report job in plain Python: jobcast work --exec report="python3 examples/exec/report.py"
import json, sys, time

args = json.load(sys.stdin)  # the job's args
rows = args.get("rows", 5)
for i in range(1, rows + 1):
    time.sleep(args.get("delay", 0.2))  # the real work goes here
    print(json.dumps({"progress": 100 * i / rows, "message": f"row {i}/{rows}"}), flush=True)
print(json.dumps({"event": "report.ready", "data": {"rows": rows}}), flush=True)
print(json.dumps({"result": {"rows": rows, "name": args.get("name", "report")}}))
