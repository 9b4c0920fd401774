package testenv

import (
	"context"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
)

// BindRBAC creates the Roles and ClusterRoles of an RBAC file (YAML documents separated by ---) that keep accepts,
// each in the namespace it names or else in namespace, and binds each to user.
func BindRBAC(t testing.TB, client kubernetes.Interface, file string, data []byte, namespace, user string, keep func(name string) bool) {
	t.Helper()
	ctx := context.Background()
	subjects := []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}}
	created := func(err error) {
		t.Helper()
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("%s: %v", file, err)
		}
	}
	for _, doc := range strings.Split(string(data), "\n---\n") {
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		switch o := obj.(type) {
		case *rbacv1.Role:
			if !keep(o.Name) {
				continue
			}
			ns := o.Namespace
			if ns == "" {
				ns = namespace
			}
			_, err := client.RbacV1().Roles(ns).Create(ctx, o, metav1.CreateOptions{})
			created(err)
			binding := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: o.Name + "-" + user}, Subjects: subjects,
				RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: o.Name}}
			_, err = client.RbacV1().RoleBindings(ns).Create(ctx, binding, metav1.CreateOptions{})
			created(err)
		case *rbacv1.ClusterRole:
			if !keep(o.Name) {
				continue
			}
			_, err := client.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
			created(err)
			binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: o.Name + "-" + user}, Subjects: subjects,
				RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: o.Name}}
			_, err = client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{})
			created(err)
		default:
			t.Fatalf("%s: unexpected %T", file, obj)
		}
	}
}

// Impersonating writes a copy of kubeconfig whose requests impersonate user, and returns its path.
func Impersonating(t testing.TB, kubeconfig, user, file string) string {
	t.Helper()
	config, err := clientcmd.LoadFromFile(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, auth := range config.AuthInfos {
		auth.Impersonate = user
	}
	if err := clientcmd.WriteToFile(*config, file); err != nil {
		t.Fatal(err)
	}
	return file
}
