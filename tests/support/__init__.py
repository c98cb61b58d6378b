"""What the tests use and are not tests themselves: the real worker as a process (worker_api), a stand-in for
RunPod's platform (runpod_standin), the client as a process (client_run), a fault-injecting proxy
(fault_proxy), the static template check (template_check), the tiers and their watch (tiers), comfy_nodes'
patch modules without ComfyUI (comfy_nodes_parts). Test files
are tests/test_*.py; nothing here is collected."""
