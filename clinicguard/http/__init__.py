"""HTTP hardening: the request pipeline's middleware, security headers, problem answers."""
