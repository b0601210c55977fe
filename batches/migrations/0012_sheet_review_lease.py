"""The review queue's lease on a sheet: who has it open, and until when."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('batches', '0011_printjob'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name='sheet',
            name='review_holder',
            field=models.ForeignKey(blank=True, help_text='Reviewer who has this sheet open in the queue.', null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL),
        ),
        migrations.AddField(
            model_name='sheet',
            name='review_token',
            field=models.CharField(blank=True, help_text="The reviewer's browser session holding the lease (one login may review in several browsers).", max_length=32),
        ),
        migrations.AddField(
            model_name='sheet',
            name='review_lease_until',
            field=models.DateTimeField(blank=True, help_text="The reviewer's lease ends then unless renewed.", null=True),
        ),
    ]
