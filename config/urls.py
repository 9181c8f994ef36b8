from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from retrieval import views as retrieval_views
from worker import urls as worker_urls
from worker import views as worker_views

urlpatterns = [
    path("", retrieval_views.home, name="home"),
    path("healthz", worker_views.healthz, name="healthz"),
    # Log in and out and change passwords; no e-mail reset: the platform sends no mail, and
    # admins set new passwords in the admin.
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "accounts/password_change/",
        auth_views.PasswordChangeView.as_view(),
        name="password_change",
    ),
    path("accounts/token/", retrieval_views.api_token, name="api_token"),
    path(
        "accounts/password_change/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("admin/", admin.site.urls),
    path("api/v1/", include("retrieval.api_urls")),
    path("api/v1/", include((worker_urls.api_urlpatterns, "worker_api"))),
    path("api/v1/", include("labeling.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("", include("retrieval.urls")),
    path("", include("worker.urls")),
    path("", include("labeling.urls")),
]
