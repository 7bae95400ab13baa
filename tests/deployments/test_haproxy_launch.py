"""deployments/haproxy_launch.py: Ray's HAProxy config rebound to loopback, and the launcher
script Ray runs in place of the binary (it becomes the program it launches)."""

from __future__ import annotations

import subprocess
import sys

from deployments.haproxy_launch import config_file, loopback_binds, write_launcher


def test_loopback_binds_rebinds_the_wildcard_binds_of_rays_template():
    from jinja2 import Template
    from ray.serve._private.haproxy_templates import HAPROXY_CONFIG_TEMPLATE

    # Only the lines that bind: Ray's template rendered needs its whole context.
    binds = [
        line for line in HAPROXY_CONFIG_TEMPLATE.splitlines() if line.strip().startswith("bind")
    ]
    assert binds, "Ray's HAProxy template has no bind line: haproxy_launch needs a look"
    config = Template("\n".join(binds)).render(
        config={
            "metrics_port": 9101,
            "stats_port": 8404,
            "frontend_host": "127.0.0.1",
            "frontend_port": 8000,
            "grpc_frontend_host": "127.0.0.1",
            "grpc_frontend_port": 9000,
        }
    )
    assert "*:" in config or "bind :" in config  # what the template binds on all interfaces
    rebound = loopback_binds(config)
    for line in rebound.splitlines():
        assert line.split()[1].startswith("127.0.0.1:"), line
    assert "127.0.0.1:9101" in rebound and "127.0.0.1:8404" in rebound
    assert "127.0.0.1:9000 proto h2" in rebound  # options after the address kept
    # A host the user chose, and lines that are not binds, stay as they are.
    other = "    bind 10.0.0.5:8000\n    stats uri /stats\n    bind [::1]:80"
    assert loopback_binds(other) == other
    assert loopback_binds("  bind 0.0.0.0:81 ssl") == "  bind 127.0.0.1:81 ssl"


def test_config_file_is_the_argument_after_f():
    assert config_file(["-db", "-f", "/x/haproxy.cfg", "-sf", "12"]) == "/x/haproxy.cfg"
    assert config_file(["-db"]) is None


def test_the_launcher_rewrites_the_config_then_becomes_the_program(tmp_path):
    config = tmp_path / "haproxy.cfg"
    config.write_text("frontend stats\n  bind *:8404\n  bind :9101\n")
    # A stand-in "binary" that prints its pid-independent view: its argv and the config it reads.
    program = tmp_path / "fake-haproxy"
    program.write_text(
        f"#!{sys.executable}\nimport sys, pathlib\n"
        "print(sys.argv[1:]); print(pathlib.Path(sys.argv[sys.argv.index('-f') + 1]).read_text())\n"
    )
    program.chmod(0o755)
    launcher = write_launcher(tmp_path, str(program), loopback=True)
    out = subprocess.run(
        [str(launcher), "-db", "-f", str(config), "-sf", "7"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert f"['-db', '-f', '{config}', '-sf', '7']" in out.stdout  # Ray's arguments, unchanged
    assert "bind 127.0.0.1:8404" in out.stdout and "bind 127.0.0.1:9101" in out.stdout
    # Not on loopback: the config is left alone.
    config.write_text("  bind *:8404\n")
    out = subprocess.run(
        [str(write_launcher(tmp_path, str(program), loopback=False)), "-f", str(config)],
        capture_output=True,
        text=True,
    )
    assert "bind *:8404" in out.stdout
