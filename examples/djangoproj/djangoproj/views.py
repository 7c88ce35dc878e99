import hashlib

from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

FORM_PAGE = """<!doctype html>
<title>Form</title>
<form method="post" action="/form"><input name="name"><button>Send</button></form>
<form method="post" action="/upload" enctype="multipart/form-data">
<input type="file" name="file"><button>Upload</button></form>
"""


def index(request):
    return HttpResponse("<h1>ferrocorn example</h1><p>Hello from Django!</p>")


@csrf_exempt
def form(request):
    if request.method == "POST":
        return JsonResponse({"form": dict(request.POST.lists()),
                             "content_type": request.content_type})
    return HttpResponse(FORM_PAGE)


@csrf_exempt
def upload(request):
    if request.method != "POST":
        return HttpResponse(status=405)
    f = request.FILES.get("file")
    if f is None:
        data = request.body
        return JsonResponse({"size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    h = hashlib.sha256()
    size = 0
    for chunk in f.chunks():
        h.update(chunk)
        size += len(chunk)
    return JsonResponse({"filename": f.name, "size": size, "sha256": h.hexdigest(),
                         "fields": request.POST.dict()})


def stream(request):
    n = int(request.GET.get("n", 10))
    size = int(request.GET.get("size", 1024))

    def gen():
        for i in range(n):
            yield (b"%c" % (ord("a") + i % 26)) * size

    return StreamingHttpResponse(gen(), content_type="application/octet-stream")


@csrf_exempt
def echo(request):
    return JsonResponse({"method": request.method, "path": request.path,
                         "query": request.META.get("QUERY_STRING", ""),
                         "body": request.body.decode("latin-1")})
