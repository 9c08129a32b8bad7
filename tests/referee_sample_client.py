"""The pycurl calls of the LPIRC sample client, made exactly as the original makes them.

The original sample client (``client/source/client.py``, LPIRC 2015, HELPS, Purdue University;
github.com/luyunghsiang/LPIRC) is Python 2 and carries no licence, so it is not copied here:
this script makes the very same requests with the same pycurl options -- a scheme-less URL
``host:port/call``, ``POSTFIELDS`` = ``urlencode({'token': token}) + '&' + urlencode(data,
True)`` for results, the image written to a temp file and moved to the image folder on 200 --
plus the ``/zipimages`` fetch of the 2017 client (``get_zip.py``), and a logout.

Usage: referee_sample_client.py --ip 127.0.0.1 --port P --user U --pass PW --in golden.csv
       --im_dir DIR --temp_dir DIR
golden.csv: space-separated ``image_name CLASS_ID confidence xmin ymin xmax ymax`` rows, the
answers to post (the original read the same file to simulate a recognizer).
Exit 0 when every call got 200; prints what it did.
"""

import csv
import getopt
import io
import os
import shutil
import sys
import zipfile
from urllib.parse import urlencode

import pycurl

host_ipaddress, host_port = "127.0.0.1", "5000"


def url(call):
    return host_ipaddress + ":" + host_port + call


def get_token(username, password):
    buffer = io.BytesIO()
    c = pycurl.Curl()
    c.setopt(c.URL, url("/login"))
    c.setopt(c.POSTFIELDS, urlencode({"username": username, "password": password}))
    c.setopt(c.WRITEFUNCTION, buffer.write)
    c.perform()
    status = c.getinfo(pycurl.HTTP_CODE)
    c.close()
    return buffer.getvalue().decode(), 1 if status == 200 else 0


def get_no_of_images(token):
    buffer = io.BytesIO()
    c = pycurl.Curl()
    c.setopt(c.URL, url("/no_of_images"))
    c.setopt(c.POSTFIELDS, urlencode({"token": token}))
    c.setopt(c.WRITEFUNCTION, buffer.write)
    c.perform()
    status = c.getinfo(pycurl.HTTP_CODE)
    c.close()
    return buffer.getvalue().decode(), 1 if status == 200 else 0


def get_image(token, image_number, image_directory, temp_directory):
    c = pycurl.Curl()
    c.setopt(c.URL, url("/image"))
    c.setopt(c.POSTFIELDS, urlencode({"token": token, "image_name": str(image_number)}))
    tmp = os.path.join(temp_directory, str(image_number) + ".jpg")
    with open(tmp, "wb") as f:
        c.setopt(c.WRITEDATA, f)
        c.perform()
        status = c.getinfo(pycurl.HTTP_CODE)
        c.close()
    if status == 200:
        shutil.copyfile(tmp, os.path.join(image_directory, str(image_number) + ".jpg"))
    os.remove(tmp)
    return 1 if status == 200 else 0


def get_zip(token, count):
    c = pycurl.Curl()
    c.setopt(c.URL, url("/zipimages"))
    c.setopt(c.POSTFIELDS, urlencode({"token": token, "image_name": str(count)}))
    my_buffer = io.BytesIO()
    c.setopt(c.WRITEDATA, my_buffer)
    c.perform()
    status = c.getinfo(pycurl.HTTP_CODE)
    c.close()
    my_buffer.seek(0)
    return (zipfile.ZipFile(my_buffer) if status == 200 else None), status


def post_result(token, data):
    c = pycurl.Curl()
    c.setopt(c.URL, url("/result"))
    c.setopt(c.POSTFIELDS, urlencode({"token": token}) + "&" + urlencode(data, True))
    c.setopt(c.WRITEFUNCTION, io.BytesIO().write)
    c.perform()
    status = c.getinfo(pycurl.HTTP_CODE)
    c.close()
    return 1 if status == 200 else 0


def logout(token):
    c = pycurl.Curl()
    c.setopt(c.URL, url("/logout"))
    c.setopt(c.POSTFIELDS, urlencode({"token": token}))
    c.setopt(c.WRITEFUNCTION, io.BytesIO().write)
    c.perform()
    status = c.getinfo(pycurl.HTTP_CODE)
    c.close()
    return 1 if status == 200 else 0


KEYS = ("image_name", "CLASS_ID", "confidence", "xmin", "ymin", "xmax", "ymax")


def main():
    global host_ipaddress, host_port
    opts, _ = getopt.getopt(sys.argv[1:], "hw:p:", ["ip=", "port=", "user=", "pass=", "in=",
                                                     "im_dir=", "temp_dir="])
    o = dict(opts)
    host_ipaddress, host_port = o["--ip"], o["--port"]
    token, status = get_token(o["--user"], o["--pass"])
    if status == 0:
        sys.exit("Incorrect Username and Password. Bye!")
    no_of_images, status = get_no_of_images(token)
    if status == 0:
        sys.exit("Token, Incorrect or Expired. Bye!")
    n = int(no_of_images)
    for w in range(1, n + 1):  # every image, one /image call each
        if get_image(token, w, o["--im_dir"], o["--temp_dir"]) == 0:
            sys.exit(f"Get Image {w} Failed, Exiting, Bye!")
    zipped = 0
    for count in range(1, n + 1, 100):  # and every zip, as the 2017 client fetched them
        z, status = get_zip(token, count)
        if z is None:
            sys.exit(f"Get zip {count} failed ({status}), Exiting, Bye!")
        zipped += len(z.namelist())
    with open(o["--in"]) as f:
        rows = list(csv.reader(f, delimiter=" "))
    for i in range(0, len(rows), 5):  # five answers per POST, as get_lines(5) did
        data = {k: [r[j] for r in rows[i:i + 5]] for j, k in enumerate(KEYS)}
        if post_result(token, data) == 0:
            sys.exit("Post Result Failed, Exiting, Bye!")
    if logout(token) == 0:
        sys.exit("Logout failed")
    print(f"images {n} fetched one by one, {zipped} in zips, {len(rows)} answers posted")


if __name__ == "__main__":
    main()
