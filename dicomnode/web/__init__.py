"""The node's HTTP side: a page of results, a JSON API and Prometheus metrics.

Started by ``dicomnode serve --http-port`` (:mod:`dicomnode.web.server`): uvicorn in a
thread of the serving process. Importing this package imports nothing heavy;
Starlette, uvicorn and Jinja2 load with :mod:`dicomnode.web.app`.
"""
